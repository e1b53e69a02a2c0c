"""Applications: ``restore`` for a user's own images, and the offline ``demo``."""
