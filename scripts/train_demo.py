"""Train the bundled demo model (models/pww-demo); see pww_ldm/train/run.py for the options."""

from pww_ldm.allocator import tune_malloc

tune_malloc()  # before torch allocates anything

from pww_ldm.train.run import main  # noqa: E402

if __name__ == "__main__":
    main()
