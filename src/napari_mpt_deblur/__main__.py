from napari_mpt_deblur.cli import main

raise SystemExit(main())
