"""Side measurements besides training: memory, FFN and activation timings, saturation, Swish's beta (torch)."""
