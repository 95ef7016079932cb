"""Stand-ins for the outside systems, for the tests and the demo.

Each speaks the real protocol over loopback, keeps state, and can be told to fail, so the
production connectors cannot tell it from the real thing except by URL and credentials.
Nothing in the app imports this package.
"""
