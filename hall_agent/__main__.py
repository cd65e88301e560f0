from hall_agent.cli import main

raise SystemExit(main())
