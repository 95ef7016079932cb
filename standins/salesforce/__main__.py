import sys

from standins.salesforce.cli import main

if __name__ == "__main__":
    sys.exit(main())
