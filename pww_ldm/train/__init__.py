"""Training of the bundled demo model (Lightning at the edge; pww_ldm.models stays plain).

shapes: the procedural data set and layout renderer; lightning_modules: the stage trainers;
run: the two-stage driver behind scripts/train_demo.py; eval_regions: the region benchmark.
"""
