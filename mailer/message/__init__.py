"""The bytes of one mail: MIME building and DKIM signing."""
