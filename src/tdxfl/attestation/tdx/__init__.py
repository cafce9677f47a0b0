"""Intel TDX backend: configfs-tsm quote generation and DCAP quote verification."""
