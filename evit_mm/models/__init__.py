"""The model core: pure PyTorch, no mm imports."""
