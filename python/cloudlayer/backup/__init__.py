"""Backups that restore: consistent LMDB copies of every store, a manifest of digests, keys kept apart."""
