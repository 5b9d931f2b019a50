"""The Quora duplicate-question pipeline, declared once (see tasks/pipeline.py)."""
from tasks.pipeline import LOSSES, MODEL_LOADER, Curve, Out, Pipeline, Reference, Stage
from tasks.quora.paths import QuoraPaths

P = QuoraPaths()
NOTE = "research note: the full Quora dump (404k pairs), its own split"

PIPELINE = Pipeline(
    name="quora",
    title="Quora duplicate questions",
    data_reports=(str(P.raw / "ingest.json"), str(P.clean / "clean.json"), str(P.split / "split.json")),
    model_name="quora-duplicates",
    metrics_file=str(P.metrics),
    results_file=str(P.results),
    summary=(("f1", "test.f1"),),
    headline="test.accuracy",
    baselines=("baselines.majority.accuracy",),
    references=(
        Reference("Gensim vectors, plain mean + Siamese", 0.69, NOTE,
                  "table.gensim_siamese.accuracy"),
        Reference("pretrained vectors, plain mean + Siamese", 0.72, NOTE,
                  "table.pretrained_siamese.accuracy"),
        Reference("TF-IDF-weighted vectors + Siamese", 0.79, NOTE, "table.tfidf_siamese.accuracy"),
        Reference("TF-IDF-weighted vectors + FC head", 0.84, NOTE, "table.tfidf_fc_head.accuracy"),
        Reference("BiRNN + 1D conv", 0.91, NOTE, "table.birnn_conv.accuracy"),
        Reference("majority class", 0.63, NOTE, "baselines.majority.accuracy"),
    ),
    rescorer="tasks.quora.rescore",
    checks="tasks.quora.checks",
    test_data_stage="quora_split",
    data_stages=("quora_ingest", "quora_clean", "quora_split"),
    stages=(
        Stage("quora_ingest", "tasks.quora.ingest:ingest_stage",
              "question pairs from the source (demo, file, live TSV) with a quarantine",
              params=("common.seed", "quora.source", "quora.live", "quora.file", "quora.demo"),
              outs=(Out(str(P.raw), persist=True),), input_params=("quora.file.path",)),
        Stage("quora_clean", "tasks.quora.clean:clean_stage",
              "normalised pairs; pairs with a missing or short question dropped, by reason",
              params=("quora.clean",), deps=(str(P.raw),), outs=(str(P.clean),)),
        Stage("quora_split", "tasks.quora.clean:split_stage",
              "train / train-dev / dev / test (random stratified or question-disjoint)",
              params=("common.seed", "quora.split"), deps=(str(P.clean),), outs=(str(P.split),)),
        Stage("quora_embed", "tasks.quora.embed:embed_stage",
              "tokens, TF-IDF fitted on train, word vectors (gensim or a pretrained file)",
              params=("common.seed", "quora.embed"),
              deps=(str(P.split),), outs=(str(P.embed),),
              input_params=("quora.embed.pretrained_path",)),
        Stage("quora_train", "tasks.quora.training:train_stage",
              "the Siamese / FC-head / BiRNN+conv models (the table's configurations too)",
              params=("common.seed", "common.device", "common.mlflow", "quora.model",
                      "quora.train", "quora.embed", "quora.evaluate.table"),
              code_files=(MODEL_LOADER,),
              deps=(str(P.split), str(P.embed)), outs=(str(P.artifacts),)),
        Stage("quora_evaluate", "tasks.quora.report:evaluate_stage",
              "accuracy with intervals vs the majority baseline, the variants table, error "
              "analysis; registers the model",
              params=("common.seed", "common.mlflow", "quora.evaluate"),
              code_files=(MODEL_LOADER,),
              deps=(str(P.artifacts),), outs=(str(P.results),), metrics=(str(P.metrics),),
              plots=(str(P.plots),),
              curves=(Curve(str(P.curves / "learning_curve.csv"), "quora: learning curve",
                            "epoch", LOSSES, "loss"),)),
    ),
)
