"""Sans-IO market protocol: messages, codec, envelope and job state machines."""
