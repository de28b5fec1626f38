// The live dashboard.
