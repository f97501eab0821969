"""Losses used by the editing methods (CLIP loss, identity loss)."""
