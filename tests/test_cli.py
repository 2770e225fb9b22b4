from cnn_apps.cli import main, split_overrides


def test_models_lists_the_zoo_with_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("alexnet", "vgg16", "vgg19", "resnet18", "resnet34", "resnet50", "plain18", "plain34"):
        assert name in out
    assert "138,357,544" in out and "19.63" in out  # VGG16 parameters, VGG19 GMACs


def test_set_values_split_like_the_mlproject_passes_them():
    assert split_overrides(["a.b=1 c.d=2"]) == ["a.b=1", "c.d=2"]
    assert split_overrides(["study.settings=[none, l2]"]) == ["study.settings=[none, l2]"]
    assert split_overrides([""]) == []
