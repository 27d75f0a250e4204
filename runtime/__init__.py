"""What every heapd role process needs: configuration, logs, gRPC servers, doorbells."""
