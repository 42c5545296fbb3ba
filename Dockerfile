# The image `cme-ser compile --target kubeflow --image IMG` names for every pipeline node.
#   docker build -t IMG . && docker push IMG
# Based on the TFX release this project pins (pyproject.toml: tfx==1.16.0), so the
# orchestrator's launcher (tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor)
# is the same TFX that compiled the pipeline.
FROM tensorflow/tfx:1.16.0

WORKDIR /opt/cme-ser
COPY pyproject.toml constraints.txt README.md ./
COPY infra ./infra
COPY preprocessing ./preprocessing
COPY trainer ./trainer
COPY serving ./serving
COPY pipeline ./pipeline
COPY experiments ./experiments
COPY cli ./cli
# constraints.txt is the set the tests ran with; a non-editable install, so the code the
# pipeline runs is the code in site-packages, whatever the working directory.
RUN python -m pip install --no-cache-dir -c constraints.txt . \
 && python -c "import pipeline.components, pipeline.calibrator, trainer.module, pipeline.infra_validation"

# The TFX image's ENTRYPOINT runs a TFX executor script; Kubeflow gives each node its own
# command anyway, and `docker run IMG cme-ser ...` should run exactly that.
ENTRYPOINT []
CMD ["cme-ser", "--help"]
