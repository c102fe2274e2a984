"""A ModelScope Studio (Gradio SDK) that serves the modelscope-sdxl web page (docs/webui.md).

Set the Studio's environment variable MODELSCOPE_SDXL_MODEL to the model repo (for example
OWNER/sdxl-base; MODELSCOPE_SDXL_REVISION for its revision); without it the page runs the mini model
shipped in the package. requirements.txt beside this file installs the package with its [webui] extra.
"""
from modelscope_sdxl.cli.webui import serve, studio_app

demo = studio_app()

if __name__ == '__main__':
    serve(demo)  # on $GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT, which a Studio sets
