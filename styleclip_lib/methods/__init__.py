"""The three StyleCLIP editing methods as pipelines (one object per method)."""
