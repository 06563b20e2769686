"""TOML specs: tables parsed into a graph, its training settings and its data; running them."""
