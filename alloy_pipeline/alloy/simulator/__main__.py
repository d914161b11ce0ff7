"""`python -m alloy_pipeline.alloy.simulator --port 8765 --api-key demo-key` serves the demo
dataset in the foreground, for pointing `dagster dev` at."""

from alloy_pipeline.alloy.simulator.server import main

if __name__ == "__main__":
    main()
