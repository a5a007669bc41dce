"""evit_mm.models.checkpoint: damaged, empty, truncated, non-finite and other-family checkpoints get a message
naming the file and the cause; the converters name an empty input."""
import re

import pytest
import torch
from conftest import load_tool


@pytest.fixture
def damaged(tmp_path):
    from evit_mm.models import EfficientViTM
    model = EfficientViTM('m0')
    good = tmp_path / 'good.pth'
    torch.save(model.state_dict(), good)
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    truncated = tmp_path / 'truncated.pth'
    data = good.read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    return dict(empty=str(empty), truncated=str(truncated), good=str(good))


@pytest.mark.parametrize('kind, cause', [('empty', 'is empty'), ('truncated', 'truncated')])
def test_damaged_file_names_the_file(damaged, kind, cause):
    from mmengine.runner.checkpoint import CheckpointLoader

    from evit_mm.mm.compat import apply_all
    from evit_mm.models import EfficientViTM, read_checkpoint
    from evit_mm.models.checkpoint import CheckpointFileError
    apply_all()
    path = damaged[kind]
    for load in (lambda: read_checkpoint(path), lambda: EfficientViTM('m0').load_pretrained(path),
                 lambda: CheckpointLoader.load_checkpoint(path, map_location='cpu')):
        with pytest.raises(CheckpointFileError, match=cause) as err:
            load()
        assert path in str(err.value)


def test_nonfinite_weights_are_refused(tmp_path):
    from evit_mm.models import EfficientViTM
    from evit_mm.models.checkpoint import NonFiniteWeightsError
    model = EfficientViTM('m0')
    sd = model.state_dict()
    sd['patch_embed.0.conv.weight'] = sd['patch_embed.0.conv.weight'].clone()
    sd['patch_embed.0.conv.weight'][0, 0, 0, 0] = float('nan')
    sd['stages.0.blocks.0.attn.attention_biases'] = torch.full_like(sd['stages.0.blocks.0.attn.attention_biases'],
                                                                    float('inf'))
    path = str(tmp_path / 'diverged.pth')
    torch.save(sd, path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteWeightsError) as err:
        model.load_pretrained(path)
    assert path in str(err.value)
    assert sorted(err.value.keys) == ['patch_embed.0.conv.weight', 'stages.0.blocks.0.attn.attention_biases']
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_msra_checkpoint_into_mit_model_names_the_family(tmp_path):
    """An EfficientViT-M4 file loaded into B2: before, "timm state dict: cannot tell EfficientViT-B from -L"."""
    from evit_mm.models import CheckpointMismatchError, EfficientViTB, EfficientViTM
    m4 = EfficientViTM('m4').state_dict()
    path = str(tmp_path / 'efficientvit_m4.pth')
    torch.save({'model': m4}, path)
    with pytest.raises(ValueError) as err:
        EfficientViTB('b2').load_pretrained(path)
    msg = str(err.value)
    assert path in msg and 'EfficientViT-M' in msg and 'EfficientViTM' in msg and 'm4' in msg
    assert 'cannot tell' not in msg
    # under backbone. (a detector checkpoint): the key diff, then the same explanation
    det = str(tmp_path / 'detector_m4.pth')
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in m4.items()}}, det)
    with pytest.raises(CheckpointMismatchError, match=r'hint: this is an EfficientViT-M \(MSRA\) checkpoint'):
        EfficientViTB('b2').load_pretrained(det)


def test_mit_checkpoint_into_msra_model_names_the_file(tmp_path):
    from evit_mm.models import EfficientViTB, EfficientViTM
    path = str(tmp_path / 'efficientvit_b2.pth')
    torch.save(EfficientViTB('b2').state_dict(), path)
    with pytest.raises(ValueError, match=re.escape(path) + ': not an EfficientViT-M state dict'):
        EfficientViTM('m4').load_pretrained(path)


@pytest.mark.parametrize('allow_pickle', [False, True])
def test_converter_names_an_empty_input(damaged, capsys, allow_pickle):
    converter = load_tool('convert_efficientvit_msra')
    args = [damaged['empty'], damaged['empty'] + '.out'] + (['--allow-pickle'] if allow_pickle else [])
    assert converter.main(args) == 1
    err = capsys.readouterr().err
    assert damaged['empty'] in err and 'is empty' in err
