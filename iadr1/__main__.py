"""`python -m iadr1`: guarded because vLLM spawns worker processes that re-import the main module."""

if __name__ == "__main__":
    from iadr1.cli import main

    main()
