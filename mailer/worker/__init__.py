"""The worker front door: boot (broker, App, sweeper thread) and the Dramatiq actors."""
