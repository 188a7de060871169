"""Test support that ships with the daemons: failpoints that tests arm through the environment.

Production code calls ``failpoints.hit``; unarmed (always, outside tests) it costs one dict lookup."""
