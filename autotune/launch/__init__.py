"""Launchers of the generated kernels: shape checks, allocation, grid, launch. One module per kernel family."""
