"""What stages run on besides the file system: a Ray cluster (local or remote) and the network."""
