"""The ``rmtkd`` command-line application: argument parsing (``cli``), the tasks it runs (``tasks``), its output
folder (``run_folder``), reports (``report``) and the spectrum job (``spectrum``). It reaches the library only
through typed configs; nothing in the library imports it."""
