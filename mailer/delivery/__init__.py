"""Sending one stored delivery: claim under a lease, gate, compose, personalize, send, record; the sweeper; bounces."""
