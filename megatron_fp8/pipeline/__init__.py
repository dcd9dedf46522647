"""Forward/backward schedules over micro-batches (no pipelining; 1F1B with the parallel layers)."""
