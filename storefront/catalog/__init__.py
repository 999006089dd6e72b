"""The catalog: posts and their images, prices and offers, previews and the demo content."""
