import sys

from standins.marketing_cloud.cli import main

if __name__ == "__main__":
    sys.exit(main())
