import sys

from hpo_service.driver.process import main

sys.exit(main())
