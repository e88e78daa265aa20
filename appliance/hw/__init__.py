"""One small driver per physical thing. Nothing above this layer touches a device directly."""
