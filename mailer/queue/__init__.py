"""The enqueue port: queue names, sending a message by actor name, building the Dramatiq broker."""
