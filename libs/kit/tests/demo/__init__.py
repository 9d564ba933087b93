"""A tiny service built from the kit, used to test the kit through real HTTP, gRPC and NATS."""
