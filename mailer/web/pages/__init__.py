"""The HTML pages a recipient sees."""
