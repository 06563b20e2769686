"""The graph IR: the op table, tensors and the immutable graph they form, shapes, initializers."""
