"""The fpol compiler: source -> AST -> Policy -> classes -> C -> object."""
