"""Data subject requests (GDPR Art. 15, 17, 20): the access export, erasure, and tracking retention."""
