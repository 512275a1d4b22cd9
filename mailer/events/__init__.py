"""Shop events: declared schemas, validation and the snapshot automations compare."""
