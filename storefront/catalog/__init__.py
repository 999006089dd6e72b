"""The catalog: posts and their images, prices, uploads and previews, and the demo content."""
