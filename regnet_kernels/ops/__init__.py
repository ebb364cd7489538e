"""One module per op: its public function, argument checks, and the eager reference."""
