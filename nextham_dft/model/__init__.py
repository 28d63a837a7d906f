"""E(3)-equivariant H(0)-correction model (torch + e3nn). Never parses files: it sees canonical Systems."""
