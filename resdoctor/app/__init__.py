"""The resdoctor Streamlit report (``streamlit run app/main.py -- RUN [RUN2]``)."""
