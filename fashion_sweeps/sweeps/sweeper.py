"""`hydra/sweeper=stages`: the Optuna sweeper, resumable, running one stage of a sweep (the Hydra
plugin, `hydra_plugins/fashion_sweeps_stages/`, hands its work to `StageSweep`).

The stock Optuna sweeper plugin asks `n_trials` new trials on every invocation, so a rerun of a
grid trains it all again, and it stores a diverged (NaN) run and a crashed one alike. This sweeper
keeps the plugin's config, override syntax and launchers, and plans each invocation from what the
study already holds (see `study.py` for the outcomes):

- screen, grid sampler: every grid point with no finished or diverged trial;
- screen, any other Optuna sampler: `n_trials` minus the trials done, sampled by it;
- full: the screen's top-k conditions (`select.py`) not done yet in the full study.

Each job gets its condition as overrides, the stage's MLflow parent run id (created here before
any job starts), tags, and an output folder named by its condition key (`jobs.py`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig

from fashion_sweeps import interrupts
from fashion_sweeps.data.datamodule import read_source
from fashion_sweeps.data.sources import DataError
from fashion_sweeps.errors import DiskFullError, user_error
from fashion_sweeps.paths import check_name
from fashion_sweeps.progress import stage_progress
from fashion_sweeps.redact import credentials_to_environment
from fashion_sweeps.sweeps import identity, stage_run, tables
from fashion_sweeps.sweeps.jobs import Job, StageJobs, job_dir
from fashion_sweeps.sweeps.select import full_stage
from fashion_sweeps.sweeps.space import (
    GRID_SAMPLER,
    SearchSpace,
    categorical_space,
    params_id,
    suggest,
)
from fashion_sweeps.sweeps.study import (
    abandon_leftovers,
    claim,
    done_ids,
    finish_trial,
    hold,
    link_run,
    n_done,
    open_study,
    others_active,
    outcome_of,
    sqlite_ready,
    trial_params,
)
from fashion_sweeps.tracking.runs import (
    TrackedRun,
    TrackingUnavailableError,
    check_writable,
    tracking_uri,
)

log = logging.getLogger(__name__)
# User errors that every later condition would meet too: they stop the sweep, not one condition.
STOPS_SWEEP = (TrackingUnavailableError, DiskFullError)
# The sweep and store of the last stage this process ran: `fashion-sweeps sweep` reports on it
# in the same process (no second start of MLflow and torch).
last_stage: dict[str, str] = {}


class SweepError(CompactHydraException):
    """A stage that cannot run as configured; Hydra prints the message alone."""


class StageSweep:
    """The work of `hydra/sweeper=stages` (the plugin class in `hydra_plugins.fashion_sweeps_stages`
    delegates to it): plan one stage from the study, launch its jobs, record their outcomes."""

    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        custom_search_space: str | None,
        params: DictConfig | None,
    ) -> None:
        self.sampler_cfg = sampler
        self.direction = str(getattr(direction, "name", direction))
        self.storage = storage
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = max(1, n_jobs)
        self.max_failure_rate = max_failure_rate
        self.params = params
        if custom_search_space:
            raise ValueError(
                "hydra.sweeper.custom_search_space is not supported by sweeper=stages."
            )

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        # Before the launcher holds the config: it pickles it, and Hydra's own copy (the
        # singletons' state), for each job.
        credentials_to_environment(config)
        if HydraConfig.initialized():
            credentials_to_environment(HydraConfig.instance().cfg)
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        self.job_idx = 0

    # -- planning ---------------------------------------------------------------------------

    def _settings(self) -> DictConfig:
        settings = self.config.get("sweep")
        if settings is None or settings.get("stage") not in ("screen", "full"):
            raise ValueError(
                "hydra/sweeper=stages runs a stage of a sweep: use `fashion-sweeps screen`, "
                "`fashion-sweeps full` or `fashion-sweeps sweep` (they choose `sweep=grid` "
                "unless you give another `sweep=` option)."
            )
        check_name(
            settings.name, "sweep.name", "the Optuna study, the MLflow parent run and the folder"
        )
        if not self.storage or not self.study_name:
            raise ValueError(
                "A resumable sweep needs hydra.sweeper.storage and hydra.sweeper.study_name; "
                "conf/sweep/protocol.yaml sets both."
            )
        return settings

    def _is_grid(self) -> bool:
        return str(self.sampler_cfg.get("_target_", "")) == GRID_SAMPLER

    def _sampler(self, n_trials_before: int) -> optuna.samplers.BaseSampler:
        if self._is_grid():
            # We enumerate the grid ourselves (GridSampler cannot tell what a study still lacks);
            # this sampler is never asked for a value.
            return optuna.samplers.RandomSampler()
        seed = self.sampler_cfg.get("seed")
        # The same seed on a resumed study would propose the first invocation's points again.
        extra = {} if seed is None else {"seed": int(seed) + n_trials_before}
        return instantiate(
            self.sampler_cfg,
            _execution_whitelist_=("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*"),
            **extra,
        )

    def _compose(self, overrides: list[str]) -> DictConfig:
        """A job's config for these override lines, composed as Hydra will compose the job."""
        return self.hydra_context.config_loader.load_sweep_config(self.config, overrides)

    def _screen_plan(
        self, study: optuna.Study, space: SearchSpace
    ) -> tuple[list[dict[str, Any]] | int, int]:
        """Grid: the points still to train (and the grid size). Other samplers: how many trials
        to sample (and n_trials)."""
        if self._is_grid():
            points = space.grid()
            done = done_ids(study)
            return [p for p in points if params_id(p) not in done], len(points)
        if not space.distributions:
            raise ValueError(
                "This screen has nothing to sweep: give values, e.g. "
                "`optimizer.lr=tag(log, interval(0.0001, 0.1))`."
            )
        return max(0, self.n_trials - n_done(study)), self.n_trials

    def _full_plan(self, study: optuna.Study, settings: DictConfig, space: SearchSpace) -> list:
        if space.distributions:
            log.info(
                "The full stage trains the screen's winners; the swept keys %s apply to the "
                "screen only.",
                ", ".join(space.distributions),
            )
        self.winners, runs = full_stage(self.storage, settings.full, space.fixed, self._compose)
        done = done_ids(study)
        # The full study's value space: what its winners train (a fine-tuned stage changes lr).
        self.distributions = categorical_space(runs)
        return [p for p in runs if params_id(p) not in done]

    # -- running ----------------------------------------------------------------------------

    def _choose_sweep(self, settings: DictConfig, space: SearchSpace) -> None:
        """The sweep these settings belong to (identity.py): `sweep.name`, or another name when
        its study holds results of other settings. Studies, folders and parents follow it."""
        self.result_settings = identity.sweep_settings(
            self.config, space.distributions, space.fixed
        )
        given = str(settings.name)
        name = identity.sweep_name(self.storage, given, self.result_settings)
        if name == given:
            return
        if self.study_name == f"{given}/{settings.stage}":
            self.study_name = f"{name}/{settings.stage}"
        settings.name = name  # interpolated into hydra.sweep.dir and full.screen_study

    def _plan(
        self, arguments: list[str]
    ) -> tuple[DictConfig, SearchSpace, optuna.Study, list | int, int]:
        settings = self._settings()
        space = SearchSpace.parse(self.params, arguments)
        self._choose_sweep(settings, space)
        # A store that cannot record runs, said before a study is made for them.
        check_writable(tracking_uri(self.config.tracking))
        # Exactly one of several workers started together creates the study.
        study, self.created = open_study(self.storage, self.study_name, self.direction)
        study.sampler = self._sampler(len(study.trials))
        abandon_leftovers(study)  # claims of workers that are gone
        if settings.stage == "screen":
            identity.record_settings(study, self.result_settings)
        else:
            stage_settings = identity.sweep_settings(
                self.config, space.distributions, space.fixed, stage="full"
            )
            identity.check_full_settings(study, stage_settings)
        self.winners = []
        if settings.stage == "screen":
            todo, planned = self._screen_plan(study, space)
            self.distributions = space.grid_distributions() if self._is_grid() else {}
        else:
            todo = self._full_plan(study, settings, space)
            planned = len(self.winners)
        if todo:
            self._check_data(space)
        return settings, space, study, todo, planned

    def _check_data(self, space: SearchSpace) -> None:
        """A data set every condition reads (not swept) is read once here: a wrong root stops the
        stage before its first condition and its MLflow parent run, instead of crashing each."""
        swept = {key.lstrip("+~").split(".")[0] for key in space.distributions}
        if "dataset" not in swept:
            read_source(self.config.dataset, keep=False)

    def sweep(self, arguments: list[str]) -> None:
        try:
            settings, space, study, todo, planned = self._plan(arguments)
        except (ValueError, DataError, TrackingUnavailableError) as err:  # say why, no traceback
            raise SweepError(f"{type(err).__name__}: {err}") from err
        stage, name = str(settings.stage), str(settings.name)
        n_todo = todo if isinstance(todo, int) else len(todo)
        log.info(
            "Sweep %r, stage %s: %d condition(s) planned, %d done, %d to train (study %r in %s).",
            name,
            stage,
            planned,
            n_done(study) if isinstance(todo, int) else planned - n_todo,
            n_todo,
            self.study_name,
            sqlite_ready(self.storage),
        )
        # The data set name is the default experiment of every run, and of the parent with them.
        experiment = str(self.config.tracking.experiment or self.config.dataset.name)
        # One parent for every worker on this stage: the study holds its id.
        parent = stage_run.shared_stage_run(
            study, self.created, self.config.tracking, experiment, name, stage
        )
        stage_run.log_settings(parent, settings, space.choices())
        stage_jobs = StageJobs.of(
            self._compose, space.fixed, stage, name, experiment, parent.run_id
        )
        start = time.perf_counter()
        try:
            crashed = self._run(study, space, todo, stage_jobs)
            crashed += self._train_abandoned(study, space, stage_jobs)
        except SweepError:
            raise  # the tracking store stopped answering: the parent cannot be written either
        except Exception:
            # Too many crashes (or a condition that does not compose): keep what is done visible.
            with contextlib.suppress(Exception):
                self._publish(parent, stage, name, time.perf_counter() - start)
            parent.set_tags({"status": "failed"})
            parent.end("FAILED")
            raise
        except BaseException:  # Ctrl-C: stop at once
            parent.set_tags({"status": "interrupted"})
            parent.end("KILLED")
            log.error(
                "Stage %s interrupted: finished conditions are kept; run the same command "
                "again to train the rest.",
                stage,
            )
            raise
        self._publish(parent, stage, name, time.perf_counter() - start)
        self._close(parent, study, crashed)
        last_stage.update(sweep=name, tracking_uri=parent.uri)

    @staticmethod
    def _close(parent: TrackedRun, study: optuna.Study, crashed: int) -> None:
        """End the parent as finished, or failed when conditions crashed; left RUNNING while
        other workers train: the last worker to finish ends it and publishes the whole table."""
        busy = others_active(study)
        if busy:
            log.info("%d condition(s) of this stage are still trained by other workers.", busy)
        else:
            parent.set_tags({"status": "failed" if crashed else "finished"})
            parent.end("FAILED" if crashed else "FINISHED")
        if crashed:
            log.error(
                "%d condition(s) crashed (errors above, logs in their folders); run the same "
                "command again to retry them.",
                crashed,
            )

    def _jobs(
        self, study: optuna.Study, space: SearchSpace, batch: list | int, stage_jobs: StageJobs
    ) -> list[Job]:
        if isinstance(batch, int):  # sampled: the sampler proposes each condition
            jobs = []
            done = done_ids(study)
            for _ in range(batch):
                trial = study.ask()
                try:
                    params = {k: suggest(trial, k, d) for k, d in space.distributions.items()}
                except ValueError as err:
                    finish_trial(study, trial, "crashed", None)
                    raise SweepError(
                        f"The search space differs from the one study {study.study_name!r} was "
                        f"started with ({err}). Keep it, or start a new study with another "
                        "`sweep.name`."
                    ) from err
                job = stage_jobs.job(params)
                job.trial = trial
                hold(study, trial, params, job.condition)
                if params_id(params) in done:
                    # Samplers may propose a done point again (small categorical spaces).
                    finish_trial(study, trial, "duplicate", None)
                    log.info("%s: proposed again, already done: not trained again", job.condition)
                    continue
                jobs.append(job)
            return jobs
        jobs = [stage_jobs.job(p) for p in batch]
        for job in jobs:
            job.trial = claim(study, job.params, job.condition, self.distributions)
        # A condition another worker trains, or finished meanwhile, is left to it.
        return [job for job in jobs if job.trial is not None]

    def _run(
        self,
        study: optuna.Study,
        space: SearchSpace,
        todo: list | int,
        stage_jobs: StageJobs,
    ) -> int:
        """Launch the jobs in batches of `n_jobs`; record each outcome; return how many crashed."""
        total = todo if isinstance(todo, int) else len(todo)
        planned = launched = crashed = 0
        seconds: list[float] = []  # per condition launched by this invocation
        while planned < total:
            interrupts.check()  # a SIGTERM during the last condition: stop before the next
            size = min(self.n_jobs, total - planned)
            batch = size if isinstance(todo, int) else todo[planned : planned + size]
            planned += size
            jobs = self._jobs(study, space, batch, stage_jobs)
            if not jobs:
                continue
            conditions = [job.condition for job in jobs]
            log.info(stage_progress(launched, total, conditions, seconds))
            began = time.perf_counter()
            overrides = [stage_jobs.overrides(job) for job in jobs]
            try:
                returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            except BaseException:
                for job in jobs:
                    finish_trial(study, job.trial, "abandoned", None)
                raise
            self.job_idx += len(returns)
            seconds += [(time.perf_counter() - began) / len(returns)] * len(returns)
            failures = []
            for job, ret in zip(jobs, returns, strict=True):
                launched += 1
                outcome, value = self._outcome(ret)
                link_run(job.trial, job_dir(ret))
                finish_trial(study, job.trial, outcome, value)
                self._report(launched, total, job, outcome, value, ret)
                if outcome == "crashed":
                    failures.append(ret)
            crashed += len(failures)
            for failure in failures:
                lost = user_error(failure._return_value)
                if isinstance(lost, STOPS_SWEEP):  # every later condition would fail alike
                    raise SweepError(f"{type(lost).__name__}: {lost}") from None
            if failures and crashed / launched > self.max_failure_rate:
                log.error(
                    "%d of %d condition(s) crashed, more than hydra.sweeper.max_failure_rate="
                    "%s allows: stopping. Fix the error below and run the same command again; "
                    "finished conditions are kept.",
                    crashed,
                    launched,
                    self.max_failure_rate,
                )
                failures[0].return_value  # re-raises the job's own exception  # noqa: B018
        return crashed

    def _train_abandoned(
        self, study: optuna.Study, space: SearchSpace, stage_jobs: StageJobs
    ) -> int:
        """Train the conditions of workers that died while this one worked: it passed them over
        while they were held, and no one else would train them before the stage is closed as
        complete. Returns how many crashed."""
        crashed = 0
        while True:
            done = done_ids(study)
            todo = {
                params_id(p): p
                for p in map(trial_params, abandon_leftovers(study))
                if params_id(p) not in done
            }
            if not todo:
                return crashed
            crashed += self._run(study, space, list(todo.values()), stage_jobs)

    @staticmethod
    def _outcome(ret: JobReturn) -> tuple[str, float | None]:
        if ret.status != JobStatus.COMPLETED:
            # Settings the run refused (its one paragraph says why): a failed condition, the
            # rest go on. Anything else is a crash, which max_failure_rate weighs.
            err = user_error(ret._return_value)
            refused = err is not None and not isinstance(err, STOPS_SWEEP)
            return ("refused" if refused else "crashed"), None
        return outcome_of(ret.return_value)

    @staticmethod
    def _report(
        n: int, total: int, job: Job, outcome: str, value: float | None, ret: JobReturn
    ) -> None:
        if outcome == "finished":
            log.info("[%d/%d] %s: finished, val_loss %.4f", n, total, job.condition, value)
        elif outcome == "diverged":
            log.warning("[%d/%d] %s: diverged, recorded as failed", n, total, job.condition)
        elif outcome == "refused":
            err = user_error(ret._return_value)
            log.error(
                "[%d/%d] %s: refused, recorded as failed (the other conditions go on): %s: %s",
                n, total, job.condition, type(err).__name__, err,
            )  # fmt: skip
        else:
            log.error("[%d/%d] %s: crashed: %s", n, total, job.condition, ret._return_value)

    def _publish(self, parent: TrackedRun, stage: str, name: str, seconds: float) -> None:
        winners = [w.condition for w in self.winners]
        folder = Path(str(self.config.hydra.sweep.dir))
        tables.publish_stage(parent, stage, name, winners, folder, seconds)
