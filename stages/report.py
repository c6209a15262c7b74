"""Stage `report`: the static HTML report metrics/report/index.html (metrics, learning figures, plots,
generated videos beside the ground truth), readable offline from the folder alone."""

from pipeline.config import load_params
from pipeline.errors import user_errors
from pipeline.report import report_run

SECTIONS = ("data", "evaluate", "generate")


def main() -> None:
    with user_errors("stage report"):
        params = load_params(sections=SECTIONS)
        print(report_run(list(params["data"].shards), params["generate"].model, params["evaluate"].report_clips))


if __name__ == "__main__":
    main()
