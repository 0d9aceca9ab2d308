"""Reading and writing volumes and files, always atomically."""
