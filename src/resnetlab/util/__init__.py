"""Infrastructure every part uses and none owns: crash-safe files (``fileio``), locks (``locks``), where lines go
(``log``), devices and precisions (``runtime``), figures (``pictures``), and PyTorch's private corners (``compat``)."""
