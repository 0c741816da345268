"""The command-line tools: ``keras-surgery prune`` (:mod:`surgery.cli.prune`) and
``keras-surgery train`` (:mod:`surgery.cli.train`), dispatched by :mod:`surgery.cli.main`."""
