"""Model families (one package each) and the shared MoE core and data loaders."""
