"""lema's data store: problems, attempts, corrections, augmentations, intake and exports (SQLAlchemy)."""
