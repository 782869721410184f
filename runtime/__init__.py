"""The fpol runtime: libbpf binding, kernel probing, loader, daemon."""
